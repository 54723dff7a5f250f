"""The names of the files in an adapter folder (one constant per name): this project's adapter files and a
stock peft adapter's. A leaf module: models/adapter.py, models/compat.py and models/export.py read it."""

# This project's adapter files. They are NOT peft's names: a folder holding them is not a peft
# adapter, and `PeftModel.from_pretrained` on it stops at once ("Can't find 'adapter_config.json'")
# instead of failing deep inside peft on our method names. `--export peft` (models/export.py) writes
# the stock peft form of the Hadamard family.
ADAPTER_WEIGHTS = "knowhira_adapter.safetensors"
ADAPTER_CONFIG = "knowhira_adapter.json"
# peft's own file names (a stock peft adapter folder; models/methods/peft_lib.py, models/export.py)
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
