"""Network side of dicomnode: SCP, SCU, CLI."""
