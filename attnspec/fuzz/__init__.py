"""attnspec fuzz: property-based fuzzing of the whole compiler (spec text, front end, targets)."""
