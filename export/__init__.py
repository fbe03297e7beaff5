"""ONNX export of WorldSim checkpoints and the ONNX Runtime backend."""
