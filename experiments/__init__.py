"""The front door: the ``maskstudy`` command line (and the experiment recipes)."""
