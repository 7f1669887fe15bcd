"""Media and transport metrics computed over the packets of one stream or flow."""
