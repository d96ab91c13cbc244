"""What a region holds: manifests, the catalog built from them, the sealed byte format of the
data objects, fan-out of one stream to every region, and the leftovers of interrupted backups."""
