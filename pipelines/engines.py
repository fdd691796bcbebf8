"""The two engines the stages run on: Ray (image stages) and Spark (tabular stages).

- Ray: `ray.init()` with no address starts an embedded local Ray; under `ray job submit` (RAY_ADDRESS set)
  the same call joins the cluster. Set `pipeline.engine.ray_address` to force one.
- Spark: local mode here (`local[2]`); on a cluster set `pipeline.engine.spark_master` or run under
  spark-submit / RayDP, which provide an active session that `spark_session` reuses.
Spark never writes to object storage itself (that would need Hadoop's S3A jars and its rename-based committers);
stages compute with Spark and publish with fsspec through `pipelines.storage`, one atomic object per part.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class EngineConfig:
    ray_address: str = ""
    """Ray cluster to join; empty: RAY_ADDRESS if set (ray job submit), else an embedded local Ray."""
    ray_num_cpus: int = 0
    """CPUs for an embedded local Ray (0: all of this machine's)."""
    spark_master: str = "local[2]"
    """Spark master URL; ignored when a Spark session already exists (spark-submit, RayDP)."""
    spark_driver_memory: str = "2g"


def init_ray(cfg: EngineConfig):
    import ray

    if ray.is_initialized():
        return ray
    kwargs: dict = {"log_to_driver": True, "include_dashboard": False}
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS", "")
    if address:
        kwargs["address"] = address
        kwargs.pop("include_dashboard")
    else:
        if cfg.ray_num_cpus:
            kwargs["num_cpus"] = cfg.ray_num_cpus
        # Workers must import pipelines/training/evaluation from this checkout: put the repo root on their path.
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": repo + os.pathsep + os.environ.get("PYTHONPATH", "")},
                                 "worker_process_setup_hook": "pipelines.engines.quiet_embedded_worker"}
    ray.init(**kwargs)
    return ray


# Ray Train's detached placement-group cleaner asks the state API, which the dashboard serves, whether the train
# controller is alive, once a second. An embedded Ray runs without the dashboard (nothing listens on a port), so
# every ask fails and would log a warning a second for the whole run. Nothing is lost by hushing it: the cleaner
# cannot act without the state API anyway, and an embedded Ray's placement groups end with the driver's Ray.
_NOISY_WITHOUT_DASHBOARD = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)


def quiet_embedded_worker() -> None:
    """Ray worker_process_setup_hook of the embedded Ray (see _NOISY_WITHOUT_DASHBOARD)."""
    for name in _NOISY_WITHOUT_DASHBOARD:
        logging.getLogger(name).setLevel(logging.ERROR)


def spark_session(cfg: EngineConfig, app_name: str = "witforge"):
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    # The Python workers must run the same interpreter as the driver (the project's venv).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.appName(app_name)
        .master(cfg.spark_master)
        .config("spark.driver.memory", cfg.spark_driver_memory)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "8")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
    )
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def stop_spark() -> None:
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        active.stop()
