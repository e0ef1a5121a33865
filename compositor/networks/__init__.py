"""The three networks as pure ``nn.Module``s, plus their weight I/O."""
