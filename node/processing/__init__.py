"""What is done with an object: the pixel-data report (analyze.py), pixels to what a viewer shows
(display.py), files people can open (convert.py), de-identification (anonymize/). No network here."""
