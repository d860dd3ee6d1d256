"""lightning_modules"""
