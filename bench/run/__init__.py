"""One run in its process: the worker and its stages and what they use; imports core and datasets."""
