"""Paper 000's heads on frozen encoders: outcome prediction and risk scores, and their statistics."""
