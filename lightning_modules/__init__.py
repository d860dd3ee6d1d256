"""The model: backbone, the mask family, attention injection, encoder, loss and the
LightningModule. Never imports datamodules or experiments; batches are the contract."""
