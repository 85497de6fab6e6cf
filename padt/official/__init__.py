"""padt.official: the released PaDT checkpoints (Gorilla-Lab-SCUT/PaDT, PaDT-MLLM/*). Recognising their folder
layout, translating their configuration, mapping their weight names, and converting a folder to ours."""
