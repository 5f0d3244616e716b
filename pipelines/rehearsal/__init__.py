"""The cluster rehearsal: execute the *compiled* pipeline on this machine under a pod's rules.

``kfp.local`` runs the Python DAG and ignores the platform spec, so a green local run proves
nothing about a cluster. The rehearsal reads the IR YAML a cluster receives and plays the KFP
backend for every task (DESIGN.md §8):

- :mod:`.ir` — the compiled pipeline as typed data (DAGs, tasks, executors, platform spec);
- :mod:`.values` — values as the backend hands them over (protojson numbers, MLMD metadata);
- :mod:`.images` — what each image sets (user, workdir, env) and which local environment plays it;
- :mod:`.pod` — one task as a pod: its own root filesystem, UID 10001, no host environment,
  only the declared env and volumes, no network beyond the rehearsal's loopback services;
- :mod:`.launcher` — the KFP launcher's part: executor input, inputs in, outputs out;
- :mod:`.cluster` — the services a pod talks to: S3 that checks credentials, MLflow, a teacher,
  the Kubernetes API with RBAC from ``manifests/``, Secrets from the templates, DNS names;
- :mod:`.trainer` — the Kubeflow Trainer / Training Operator: each node of a TrainJob or
  PyTorchJob as a pod, ranks on loopback;
- :mod:`.kserve` — KServe: the storage initializer with the serving account's credentials, the
  runtime's container as a pod (:mod:`.model_server` in vLLM's place), DNS, Ready and URLs;
- :mod:`.driver` — the DAG walk (ParallelFor, Collected, retries, caching, exit handler) and the
  one-line-per-task report.
"""
