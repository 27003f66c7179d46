"""Paper 003 (T1/T2 momentum contrast): inputs from a cohort with T1 and T2 volumes, and the evaluation of runs."""
