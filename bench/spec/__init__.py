"""The suite file: schema, resolution, loading, validation; imports core, datasets, run, launch; no torch."""
