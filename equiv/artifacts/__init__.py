"""What equiv writes and how it is checked: atomic files, reports, validation in onnxruntime."""
