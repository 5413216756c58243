"""Training: the one loop (`loop.fit`), the losses, the teacher's logits table, BatchNorm folding for
QAT, and keeping freed memory. Every stage that trains goes through here."""
