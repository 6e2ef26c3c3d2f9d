# opshub's JupyterHub config: glue only. The settings file says what the deployment is; the
# pure functions in opshub.configure turn it into traits. Start it with `opshub hub`.
import os
import sys
from glob import glob

from opshub.configure import apply_all
from opshub.settings import PORT_ENV, SettingsError, load_settings
from opshub.startup import prepare

c = get_config()  # noqa: F821 (provided by JupyterHub when it loads this file)

try:
    settings = load_settings(port=os.environ.get(PORT_ENV))
    runtime = prepare(settings)
except SettingsError as e:
    # A clear message naming the key, instead of a traceback from deep inside the hub.
    print(f"opshub: {e}", file=sys.stderr)
    sys.exit(2)

apply_all(c, settings, runtime)

# Escape hatch, as in TLJH: extra JupyterHub config files, loaded after ours.
if settings["hub"]["extra_config_dir"]:
    for path in sorted(glob(os.path.join(settings["hub"]["extra_config_dir"], "*.py"))):
        load_subconfig(path)  # noqa: F821
