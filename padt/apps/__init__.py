"""padt.apps: what is built on the pipeline for people to use. The demo recipe, the local web demo, and running one
task on one image (shared by ``padt predict``, ``padt serve`` and the demo scripts)."""
