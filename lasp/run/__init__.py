"""`lasp run`: the whole comparison as a graph of stage processes, seeds and variants, and its report."""
