"""Paper 001 (GEMCONT): inputs from a cohort with images, the evaluation of a run, and the rotated-character
simulation benchmark."""
