"""Built-in GPU and model catalogs (data in *.toml beside this file)."""
