project = "hepto"
extensions: list[str] = []
master_doc = "index"
exclude_patterns = ["_build"]
