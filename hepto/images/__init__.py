"""Container images on a node: hepto's own, written here, and the operator's, imported.

Each module has one job and imports only what it needs, so that the agent pays for the
one it uses: :mod:`~hepto.images.layout` writes OCI image-layout archives,
:mod:`~hepto.images.pause` the pause image, :mod:`~hepto.images.inspect` says whether an
operator's archive can be imported, :mod:`~hepto.images.ctr` runs ``ctr images import``
and reads its answer, :mod:`~hepto.images.folder` imports a node's folder of archives.
``docs/images.rst`` gives the reasons.
"""
