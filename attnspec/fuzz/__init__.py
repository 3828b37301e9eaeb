"""attnspec fuzz: property-based fuzzing of the whole compiler (spec text, front end, targets), and
`attnspec demo` (demo.py), which judges one fixed case per spec, target and dtype the same way."""
