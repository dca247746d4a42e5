"""Methods that need no training data: style transfer, texture synthesis, deconvolution."""
