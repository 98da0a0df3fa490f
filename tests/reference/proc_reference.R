# Reference values for tests/test_stats.py, computed with R's pROC (Robin et al. 2011, BMC Bioinformatics 12:77)
# and, for the binormal maximum-likelihood fit, R's ordinal::clm (heteroscedastic ordinal probit regression, which
# is the Dorfman-Alf binormal model: a = beta / exp(zeta), b = 1 / exp(zeta)).
#
# Rerun (development time only; the tests themselves never need R):
#     apt-get install -y r-cran-proc r-cran-ordinal     # Debian; or install.packages(c("pROC", "ordinal"))
#     Rscript tests/reference/proc_reference.R
# and paste the printed Python blocks over PROC_REFERENCE and BINORMAL_REFERENCE in tests/test_stats.py.
# Values in tests/test_stats.py were produced with R 4.2.2, pROC 1.18.0 and ordinal 2022.11-16.
#
# The fixtures are built from integer modular arithmetic (exact in every language), so tests/test_stats.py
# rebuilds them bit-for-bit with the same formulas (see _fixture_ties / _fixture_correlated there), i = 0, ..., n-1:
#   "ties"        (n = 80, integer scores with many ties within and across classes)
#       y = ((7 i) mod 5) < 2;   a = (37 i) mod 11 + 4 y;   b = (53 i) mod 13 + 2 y + (i mod 3)
#   "correlated"  (n = 150, continuous scores; b = a + small noise, so the two ROC curves are strongly correlated)
#       y = ((3 i) mod 7) < 3;   a = ((7919 i) mod 1000) / 1000 + 0.3 y;   b = a + ((131 i) mod 97) / 1000 + 0.04 y
#   "hanley_mcneil" (binormal only): the 5-point CT rating table of Hanley & McNeil (1982, Radiology 143:29,
#       Table I): benign counts 33, 6, 6, 11, 2 and malignant counts 3, 2, 2, 11, 33 for ratings 1..5.
# Cases (y = 1) are expected to score higher: roc(..., levels = c(0, 1), direction = "<").
# ROC points are printed as counts (sensitivity * n_cases, specificity * n_controls), which are exact integers.

suppressPackageStartupMessages({
  library(pROC)
  library(ordinal)
})

fixture <- function(name) {
  if (name == "ties") {
    i <- 0:79
    y <- as.integer((i * 7) %% 5 < 2)
    a <- (i * 37) %% 11 + 4 * y
    b <- (i * 53) %% 13 + 2 * y + (i %% 3)
  } else {
    i <- 0:149
    y <- as.integer((i * 3) %% 7 < 3)
    a <- ((i * 7919) %% 1000) / 1000 + 0.3 * y
    b <- a + ((i * 131) %% 97) / 1000 + 0.04 * y
  }
  list(y = y, a = a, b = b)
}

num <- function(x) sprintf("%.17g", x)
vec <- function(x) {  # Python list literal, 25 values per line
  rows <- split(x, ceiling(seq_along(x) / 25))
  paste0("[\n            ", paste(sapply(rows, paste, collapse = ", "), collapse = ",\n            "), ",\n        ]")
}
counts <- function(frac, n) {
  k <- round(frac * n)
  stopifnot(all(abs(k / n - frac) < 1e-12))
  vec(k)
}

cat("PROC_REFERENCE = {\n")
for (name in c("ties", "correlated")) {
  f <- fixture(name)
  ra <- roc(f$y, f$a, levels = c(0, 1), direction = "<", quiet = TRUE)
  rb <- roc(f$y, f$b, levels = c(0, 1), direction = "<", quiet = TRUE)
  ci95 <- ci.auc(ra, conf.level = 0.95, method = "delong")
  ci90 <- ci.auc(rb, conf.level = 0.90, method = "delong")
  tst <- roc.test(ra, rb, method = "delong", paired = TRUE, conf.level = 0.95)
  ca <- coords(ra, "all", ret = c("threshold", "specificity", "sensitivity"), transpose = FALSE)
  n1 <- sum(f$y == 1)
  n0 <- sum(f$y == 0)
  cat(sprintf('    "%s": {\n', name))
  cat(sprintf('        "checksum": (%d, %d, %s, %s),\n', n1, n0, num(sum(f$a)), num(sum(f$b))))
  cat(sprintf('        "auc_a": %s,\n', num(as.numeric(auc(ra)))))
  cat(sprintf('        "auc_b": %s,\n', num(as.numeric(auc(rb)))))
  cat(sprintf('        "ci_a_95": (%s, %s),\n', num(ci95[1]), num(ci95[3])))
  cat(sprintf('        "ci_b_90": (%s, %s),\n', num(ci90[1]), num(ci90[3])))
  cat(sprintf('        "z": %s,\n', num(unname(tst$statistic))))
  cat(sprintf('        "p": %s,\n', num(tst$p.value)))
  cat(sprintf('        "diff_ci_95": (%s, %s),\n', num(tst$conf.int[1]), num(tst$conf.int[2])))
  cat(sprintf('        "tp_a": %s,\n', counts(ca$sensitivity, n1)))
  cat(sprintf('        "tn_a": %s,\n', counts(ca$specificity, n0)))
  cat("    },\n")
}
cat("}\n")

# Binormal ML fit: every distinct score is one ordered category (as cadx.stats.binormal_fit does for <= 20 values).
binormal <- function(y, r) {
  d <- data.frame(r = factor(r, ordered = TRUE), y = y)
  m <- clm(r ~ y, scale = ~y, data = d, link = "probit",
           control = clm.control(gradTol = 1e-10, maxIter = 1000))
  cf <- coef(m)
  k <- length(cf)
  beta <- unname(cf[k - 1])  # location effect of y
  zeta <- unname(cf[k])      # log-scale effect of y
  a <- beta * exp(-zeta)
  b <- exp(-zeta)
  dz <- a / sqrt(1 + b^2)
  # delta method from vcov(m) (inverse observed information) on (beta, zeta)
  J <- matrix(0, 3, k)
  J[1, k - 1] <- exp(-zeta); J[1, k] <- -a                                   # d a
  J[2, k] <- -b                                                              # d b
  J[3, k - 1] <- dnorm(dz) / sqrt(exp(2 * zeta) + 1)                         # d AUC
  J[3, k] <- -dnorm(dz) * beta * exp(2 * zeta) / (exp(2 * zeta) + 1)^1.5
  se <- sqrt(diag(J %*% vcov(m) %*% t(J)))
  sprintf(paste0('"a": %s, "b": %s, "auc": %s,\n        "se_a": %s, "se_b": %s, "se_auc": %s,\n',
                 '        "log_likelihood": %s'),
          num(a), num(b), num(pnorm(dz)), num(se[1]), num(se[2]), num(se[3]), num(as.numeric(logLik(m))))
}

cat("BINORMAL_REFERENCE = {\n")
hm_y <- c(rep(0, 58), rep(1, 51))
hm_r <- c(rep(1:5, c(33, 6, 6, 11, 2)), rep(1:5, c(3, 2, 2, 11, 33)))
cat(sprintf('    "hanley_mcneil": {\n        %s,\n    },\n', binormal(hm_y, hm_r)))
f <- fixture("ties")
cat(sprintf('    "ties_a": {\n        %s,\n    },\n', binormal(f$y, f$a)))
cat("}\n")
