"""Long Range Arena tasks: ListOps, Text (IMDB), Retrieval (AAN), Image (CIFAR-10) and Pathfinder."""
