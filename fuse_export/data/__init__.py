"""Data: data set containers, loaders for the FER formats, the synthetic faces, and transforms."""
