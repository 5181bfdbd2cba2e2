"""Chat with Microsoft's Phi-3 on OpenVINO, in the browser, on your own machine."""

__version__ = "0.1.0"
