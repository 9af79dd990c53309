"""Report: the figure functions and the HTML report built from the metrics files."""
