"""From a trained (pruned or grown) network to something that ships.

- :mod:`autoprune.deploy.mlflow_model`: every completed trial's network as an MLflow
  model (``runs:/<run_id>/model``, PyTorch flavour in its ``pt2`` form, which loads with
  torch alone), and registry versions with an alias (``models:/NAME@picked``).
- :mod:`autoprune.deploy.onnx_export`: ``autoprune export``: ONNX with a dynamic batch,
  checked against PyTorch with onnxruntime, a network that cannot be exported refused
  naming its layer.
- :mod:`autoprune.deploy.source`: what ``autoprune export`` accepts as its source (a run
  id, a ``model.pt``, a ``models:/`` URI) resolved to a network and real inputs.

Latency is measured in one place for all of them: :func:`autoprune.compute.measure_latency`.
"""
