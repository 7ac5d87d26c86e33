"""hftpipe's control plane: the ReplayJob custom resource and its kopf operator.

Layers, each importing only those above it:

- :mod:`.labels`, :mod:`.naming`, :mod:`.workerapi`: the label vocabulary, the
  names derived from a job's name, and what the operator reads of the workers'
  CLI and settings.
- :mod:`.apimodel`, :mod:`.spec`, :mod:`.status`: the ReplayJob's spec and
  status as pydantic models, and the pure status roll-up.
- :mod:`.crd`: the CustomResourceDefinition, rendered from those models.
- :mod:`.builders`: pure ``build_<component>_<kind>()`` manifests.
"""
