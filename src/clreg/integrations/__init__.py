"""clreg inside the frameworks people train with: `clreg.integrations.lightning` (PyTorch Lightning) and
`clreg.integrations.transformers` (the Hugging Face Trainer). Each is an optional extra:
`pip install 'clreg[lightning]'`, `pip install 'clreg[transformers]'`."""
