from mlflow_mnist.cli import main

main()
