"""rnnkit and other frameworks and formats: the PyTorch bridge (``torch``, imported only on request,
as ``rnnkit.torch``), ONNX export (``onnx``, as ``rnnkit.onnx``) and the ONNX/Keras weight layouts
(``convert``, as ``rnnkit.convert``)."""
