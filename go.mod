module github.com/kappa-db/kappa-go

go 1.25
