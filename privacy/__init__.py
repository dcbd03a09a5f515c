"""Privacy: erasure of a contact everywhere it is written, and retention of delivery logs."""
