"""The science steps as functions over tables, one package per paper (comical, gemcont, cgni, momentum), the
statistical genetics they share (statgen), the heads on frozen encoders (downstream), and the registry of models."""
