"""User data in: schema and validation, the synthetic world, tasks, pairs, template,
tokenizer and the Lightning DataModules. Imports neither model code nor callbacks."""
