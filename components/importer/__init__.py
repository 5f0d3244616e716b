"""Stage ``import``: reflections made elsewhere (the reference scripts, an API batch job) stand in
for the teacher stages, so scoring and selection run without a teacher call."""
