"""Plain ``nn.Module`` building blocks: attentions, the shared encoder, heads."""
