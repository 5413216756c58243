"""What a run is judged by: latency on the target, and accuracy against the teacher."""
