"""Storage adapters: LevelDB (plyvel), chunk files, object stores."""
