"""The application layer: the Python API functions, export-and-verify, the quickstart, doctor, TensorRT builds."""
