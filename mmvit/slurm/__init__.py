"""SLURM as a way to run a study: a readable sbatch script (:mod:`~mmvit.slurm.script`), and
inside the allocation a Ray cluster over its nodes (:mod:`~mmvit.slurm.ray_nodes`), the study's
driver, the job's record in storage and the requeue while work remains (:mod:`~mmvit.slurm.job`).

An edge of the package (../shared/design.md): it calls the runner and storage as a user's
command would, and nothing else imports it. Stdlib only at import time: the CLI imports it to
parse options."""
