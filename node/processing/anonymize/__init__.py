"""De-identification by PS3.15 Annex E: profile.py (the table and options as one action per
attribute), apply.py (the actions on a data set and a file), keys.py (the secret key and pseudonyms)."""
