"""padt.text: everything on the text side. Prompts, the answer parser, the answer formats (VRT answers and the
text-box baseline), and building Qwen tokenizers offline."""
