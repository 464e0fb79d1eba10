"""From a model identifier to a loaded model and its tokenizer: identifiers, the plugin manager
(registry of backends, tokenizer loaders, transports), tokenizers, the model host."""
