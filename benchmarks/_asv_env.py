"""asv environment type ``virtualenv-shared``: a fresh virtualenv that reuses the caller's torch.

Imported by asv as a plugin (``"plugins": [".benchmarks._asv_env"]`` in ``asv.conf.json``),
not a benchmark module. asv builds one virtualenv per matrix entry and installs only the
``decomp`` wheel of each commit into it (``--no-deps``). torch, torchvision and the rest come
from the site-packages of the interpreter that runs ``asv`` (the project's ``.venv`` or a tox
env), chained in with a ``.pth`` file written *before* asv installs the matrix requirements,
so pip finds the pinned torch already satisfied and never downloads or reinstalls it
(torch with its CUDA libraries is several GB; the machines here are offline).
The chained path comes after the env's own site-packages, so the env's ``decomp`` wins.
"""

from __future__ import annotations

import os
import sys
import sysconfig

try:
    from asv import util
    from asv.console import log
    from asv.plugins.virtualenv import Virtualenv
except ImportError:  # imported by asv's benchmark discovery in an env without asv: nothing to do
    Virtualenv = None

PTH_NAME = "_asv_shared_site.pth"

if Virtualenv is not None:

    class SharedSiteVirtualenv(Virtualenv):
        """``virtualenv`` chained to the caller's site-packages (see the module docstring)."""

        tool_name = "virtualenv-shared"

        def _setup(self):
            env = dict(os.environ)
            env.update(self.build_env_vars)
            log.info(f"Creating virtualenv for {self.name} (chained to {sys.prefix})")
            util.check_call([sys.executable, "-m", "virtualenv", "--setuptools=bundle",
                             "-p", self._executable, self._path], env=env)
            purelib = util.check_output(
                [os.path.join(self._path, "bin", "python"), "-c",
                 "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip()
            parent = sysconfig.get_paths()["purelib"]
            with open(os.path.join(purelib, PTH_NAME), "w") as f:
                f.write(parent + "\n")
            log.info(f"Installing requirements for {self.name}")
            self._install_requirements()
