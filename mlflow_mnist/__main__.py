from mlflow_mnist.cli import run

# The guard matters: process pools (Dask's LocalCluster, multiprocessing's spawn) re-import this module.
if __name__ == "__main__":
    run()
