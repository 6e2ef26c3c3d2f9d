# The shell of opshub's JupyterLab terminals (bash --rcfile this -i): what a login shell sets up,
# then opshub's environment first on PATH, which a login shell's /etc/profile would drop, so that
# `opshub run ...` typed in a terminal is found.
[ -r /etc/profile ] && . /etc/profile
if [ -r ~/.bash_profile ]; then . ~/.bash_profile
elif [ -r ~/.profile ]; then . ~/.profile
elif [ -r ~/.bashrc ]; then . ~/.bashrc
fi
[ -n "$OPSHUB_BIN" ] && export PATH="$OPSHUB_BIN:$PATH"
